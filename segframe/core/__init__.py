"""Foundations every layer may use: errors and their messages, paths and config resolvers, atomic
writes, the command line's error printing, host facts, progress lines. Imports nothing of segframe
outside `core`."""
