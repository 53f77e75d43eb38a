"""Which rank computes which rows, and when to stop.

chunks      rows cut into fixed chunks (pure arithmetic)
balance     static blocks or work stealing between DP groups (MPI atomics)
stop        graceful stop on SIGTERM / SIGUSR1 / SIGINT
"""
