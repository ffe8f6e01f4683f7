"""The embedded local platform: which processes make it up, and their supervisor."""
