"""The `freshrank` command line and the embedded local stack it supervises."""
