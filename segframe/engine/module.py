"""LightningModule: loss, confusion-matrix metrics, optimizer/scheduler wiring, logging."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from segframe.core.errors import ConfigError
from segframe.core.metric_names import anchor_image_keys, image_summary_keys, summary_keys
from segframe.engine import losses
from segframe.evaluation.inference import check_options, infer, single_pass
from segframe.evaluation.metrics import ConfusionMatrix, PerImageScores, image_scores, labels, scores
from segframe.models.base import to_input

CLASS_WEIGHTINGS = ("none", "median_frequency", "inverse_frequency")


def class_weights(class_pixels: Sequence[int], method: str) -> list[float] | None:
    """Loss weights per class from the training split's pixel counts (the manifest's `class_pixels`).
    median_frequency: median(f) / f_c (Eigen & Fergus, ICCV 2015, over total counts);
    inverse_frequency: 1 / f_c scaled to mean 1. Classes with no pixels get weight 1."""
    if method not in CLASS_WEIGHTINGS:
        raise ConfigError(f"module.class_weighting must be one of {CLASS_WEIGHTINGS}, got {method!r}")
    if method == "none":
        return None
    counts = torch.tensor(list(class_pixels), dtype=torch.float64)
    present = counts > 0
    if not present.any():
        raise ConfigError("module.class_weighting needs pixel counts, but every class has 0 pixels in the manifest")
    freq = counts / counts.sum()
    weights = torch.ones_like(freq)
    if method == "median_frequency":
        weights[present] = freq[present].median() / freq[present]
    else:
        inverse = 1.0 / freq[present]
        weights[present] = inverse / inverse.mean()
    return [float(w) for w in weights]


class SegModule(pl.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None,
        classes: Sequence[str],
        palette: Sequence[Sequence[int]],
        loss_reduction: str = "mean",
        bias_lr_mult: float = 1.0,
        bias_weight_decay: bool = True,
        class_weighting: str = "none",
        class_pixels: Sequence[int] | None = None,
        inference: dict[str, Any] | None = None,
        model_config: dict[str, Any] | None = None,
        data_config: dict[str, Any] | None = None,
        channels_last: bool = False,
        torch_compile: bool = False,
        loss: Callable[..., nn.Module] | None = None,
        loss_config: dict[str, Any] | None = None,
    ):
        """`optimizer`/`scheduler` are factories (Hydra `_partial_`); `model_config` (the model's
        plain-dict config) is stored so eval can rebuild the model from the checkpoint alone, and
        `data_config` (the dataset's) so that eval and predict know what it was trained on.
        Speed knobs (numerics unchanged up to float rounding): `channels_last` stores weights and
        inputs NHWC (tensor-core friendly convolutions); `torch_compile` runs the training forward through
        `torch.compile` (evaluation stays eager: whole images of many sizes would recompile).
        `loss` is a loss factory (conf/loss, Hydra `_partial_`, see segframe.engine.losses), called as
        `loss(weight=<class weights or None>, reduction=loss_reduction)`; None: the factory of
        `loss_config` (a checkpoint's), else cross entropy. `loss_config` is then set to the
        factory's plain config, so a checkpoint rebuilds the same loss."""
        super().__init__()
        if loss is None:
            loss = losses.factory_from(loss_config) if loss_config else losses.CrossEntropy
        # save_hyperparameters stores the arguments' current values: the factory's plain config
        loss_config = losses.config_of(loss)
        # plain types only: checkpoints must load with torch.load(weights_only=True)
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler", "loss"])
        self.model = model
        self.channels_last, self.torch_compile = channels_last, torch_compile
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.classes, self.palette = list(classes), [list(c) for c in palette]
        self.loss_reduction = loss_reduction
        self.bias_lr_mult, self.bias_weight_decay = bias_lr_mult, bias_weight_decay
        weights = class_weights(class_pixels or [0] * len(self.classes), class_weighting) \
            if class_weighting != "none" else None
        # a buffer: moves with the module to the GPU; not persistent, it is rebuilt from the hparams
        self.register_buffer("class_weight", torch.tensor(weights, dtype=torch.float32) if weights else None,
                             persistent=False)
        # validates its arguments (e.g. a region loss refuses loss_reduction=sum) before any work
        self.criterion = loss(weight=weights, reduction=loss_reduction)
        # test-time options of segframe.evaluation.inference.infer (scales, flip, mode, crop, stride); the
        # validation during training always runs whole images, once
        self.inference = dict(inference or {})
        check_options(**self.inference)
        self.val_cm = ConfusionMatrix(len(self.classes))
        self.test_cm = ConfusionMatrix(len(self.classes))
        # per-image Dice/IoU (medical convention), beside each dataset-level matrix; class 0
        # named "background" is left out of their means
        skip_background = bool(self.classes) and self.classes[0].lower() == "background"
        self.val_img_scores = PerImageScores(len(self.classes), skip_background=skip_background)
        self.test_img_scores = PerImageScores(len(self.classes), skip_background=skip_background)
        self.last_confmat: dict[str, torch.Tensor] = {}
        self.last_image_scores: dict[str, dict[str, Any]] = {}  # image_scores() of the last epoch, per stage

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self._input(images))

    def _input(self, images: torch.Tensor) -> torch.Tensor:
        return to_input(images, torch.channels_last if self.channels_last else torch.contiguous_format)

    def _train_forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.torch_compile:
            return self(images)
        compiled = self.__dict__.get("_compiled")
        if compiled is None:
            # kept outside the module tree (object.__setattr__) so state_dict keys and checkpoints
            # are the same with and without compile; it shares self.model's parameters
            compiled = torch.compile(self.model)
            object.__setattr__(self, "_compiled", compiled)
        return compiled(self._input(images))

    def predict_scores(self, images: torch.Tensor) -> torch.Tensor:
        """Class scores with the test-time options (multi-scale, flip, sliding window)."""
        return infer(self.model, self._input(images), **self.inference)

    def _single_pass(self) -> bool:
        return single_pass(**self.inference)

    def loss(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """The configured loss (segframe.engine.losses; ignore 255 honoured, all-ignore gives 0). SegDataModule
        widens its uint8 masks on the device; masks from its loaders used without it are widened here."""
        return self.criterion(logits, masks.long())

    def on_train_epoch_start(self) -> None:
        # reshuffle shards and samples: workers are restarted each epoch with this value
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "set_epoch"):
            datamodule.set_epoch(self.current_epoch)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, masks = batch
        loss = self.loss(self._train_forward(images), masks)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=images.shape[0])
        return loss

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], metric: ConfusionMatrix, stage: str) -> None:
        images, masks = batch
        logits = self(images)
        self.log(f"{stage}/loss", self.loss(logits, masks), on_epoch=True, batch_size=images.shape[0], sync_dist=True)
        preds = labels(logits)  # = logits.argmax(1), without argmax's slow strided pass over NCHW on the CPU
        metric.update(preds, masks)
        getattr(self, f"{stage}_img_scores").update(preds, masks)  # per-image Dice/IoU beside the matrix

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_cm, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        if self._single_pass():
            self._eval_step(batch, self.test_cm, "test")
            return
        images, masks = batch  # averaged probabilities are not logits: no test loss for these
        preds = labels(self.predict_scores(images))
        self.test_cm.update(preds, masks)
        self.test_img_scores.update(preds, masks)

    def _log_scores(self, metric: ConfusionMatrix, stage: str) -> None:
        confmat = metric.compute()  # summed over ranks: identical everywhere
        result = scores(confmat)
        values = {f"{stage}/{k}": result[k] for k in summary_keys() if k != "miou"}
        for name, iou in zip(self.classes, result["per_class_iou"]):
            if not math.isnan(iou):
                values[f"{stage}/iou_{name}"] = iou
        image_metric = getattr(self, f"{stage}_img_scores")  # per image, medical convention: own names
        per_image = image_scores(**image_metric.compute(), skip_background=image_metric.skip_background)
        values.update({f"{stage}/{k}": per_image[k] for k in (*image_summary_keys(), *anchor_image_keys())
                       if k in image_summary_keys() or not math.isnan(per_image[k])})  # TernausNet's: background only
        self.log_dict(values, prog_bar=False)
        self.log(f"{stage}/miou", result["miou"], prog_bar=True)
        self.last_confmat[stage] = confmat.detach().cpu()
        self.last_image_scores[stage] = per_image
        metric.reset()
        image_metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_scores(self.val_cm, "val")

    def on_test_epoch_end(self) -> None:
        self._log_scores(self.test_cm, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        weights, biases = [], []
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                (biases if name.endswith("bias") else weights).append(param)
        bias_group: dict[str, Any] = {"params": biases, "lr_mult": self.bias_lr_mult}
        if not self.bias_weight_decay:
            bias_group["weight_decay"] = 0.0
        optimizer = self.optimizer_factory([{"params": weights, "lr_mult": 1.0}, bias_group])
        for group in optimizer.param_groups:  # paper setting: biases at 2x lr
            group["lr"] *= group["lr_mult"]
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        factory = self.scheduler_factory
        if isinstance(factory, functools.partial) and factory.keywords.get("total_iters", 0) is None:
            # poly decays over the whole run: the number of optimizer steps is known only here
            factory = functools.partial(factory, total_iters=max(1, int(self.trainer.estimated_stepping_batches)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": factory(optimizer), "interval": "step"}}
