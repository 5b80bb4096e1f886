"""Validation of the LR method against a laboratory's plan: the plan, the run, the report."""
