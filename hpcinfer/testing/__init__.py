"""Test-only machinery (fault injection). Never imported by production code paths."""
