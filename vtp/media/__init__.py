"""Media: everything that reads, plans, encodes, packages or measures pictures and sound.

Nothing here knows about jobs, queues or storage; the pipeline (vtp.pipeline) hands these
modules local paths or presigned URLs and records what they return.
"""
