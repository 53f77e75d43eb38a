"""Durable progress: finished chunks, the journal that proves them, the job's identity,
and the final file assembled from them. No MPI here: rank 0 or a tool calls it.

    chunk_files   one chunk's outputs, streamed batch by batch, committed atomically
    writer        a background thread: fsync, rename, then the journal line
    journal       checksummed records of finished chunks; reading them back
    identity      what decides a job's output (its fingerprint)
    state         resume_state(): fresh, resume, complete or refused, decided once
    assemble      chunk files -> the final HDF5 file, published by rename
"""
