"""Shared core of the video transcoding pipeline, copied into every function at build time."""
