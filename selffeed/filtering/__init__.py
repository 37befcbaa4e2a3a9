"""Deciding which samples to keep: label-free filters (majority vote, dedup, length, confidence), scorers
and verifiers, the rationale check, free-text filters, where kept labels come from and how right they are
(the audit against a few known answers)."""
