"""What a prediction is worth: the confusion matrix and its scores, test-time inference (scales,
flips, sliding window, CRF), the report, the model card and the training curves. Imports `core`,
`data` and `models` only."""
