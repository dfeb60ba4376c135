"""Policies: the protocol, rule-based baselines and the Alpamayo adapter."""

from alpasim_policy.policies.base import Policy, PolicyOutput, validate_plan

__all__ = ["Policy", "PolicyOutput", "validate_plan"]
