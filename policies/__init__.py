"""Policy schema, rule engine and audit log.

A policy turns the flat *facts* that ``guard`` gathers about one input into a decision
(allow, label, review, block) with a trace of every rule; the audit log keeps each decision
in a hash chain that nobody can quietly change later.
"""

from policies.audit_log import (
    AuditLog,
    AuditLogError,
    VerifyResult,
    generate_signing_key,
    head_hash,
    load_public_key,
    load_signing_key,
    verify_log,
)
from policies.cel_engine import KNOWN_FACTS, check_fact
from policies.policy import (
    ACTIONS,
    Decision,
    Policy,
    PolicyError,
    RuleTrace,
    builtin_policy_path,
)

__all__ = [
    "ACTIONS",
    "KNOWN_FACTS",
    "AuditLog",
    "AuditLogError",
    "Decision",
    "Policy",
    "PolicyError",
    "RuleTrace",
    "VerifyResult",
    "builtin_policy_path",
    "check_fact",
    "generate_signing_key",
    "head_hash",
    "load_public_key",
    "load_signing_key",
    "verify_log",
]
