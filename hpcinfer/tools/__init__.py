"""What a user sees around a run: live progress, status, dry run, inspect, report."""
