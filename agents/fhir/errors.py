"""The facade's errors and their FHIR form, an OperationOutcome (pure).

:class:`FhirError` is an :class:`agents.errors.AgentError` that knows its HTTP
status, its OperationOutcome ``issue.code`` (the R4 IssueType value set) and,
where it applies, the FHIRPath of the offending element. Its message reads
"<what failed>: <why>; <what to do>" like every expected failure of the CLI.
"""

from __future__ import annotations

from typing import Any

from agents.errors import AgentError

__all__ = ["FhirError", "ConsentMappingError", "AuthError", "ScopeError", "operation_outcome"]


class FhirError(AgentError):
    """An expected failure of a FHIR request: ``status`` (HTTP), ``issue`` (IssueType code),
    ``expression`` (FHIRPath of the element at fault, or None), ``diagnostics`` extra."""

    status = 400
    issue = "invalid"

    def __init__(self, message: str, *, status: int | None = None, issue: str | None = None,
                 expression: str | None = None, rule: str | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status
        if issue is not None:
            self.issue = issue
        self.expression = expression
        self.rule = rule

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(str(self), issue=self.issue, expression=self.expression, rule=self.rule)


class ConsentMappingError(FhirError):
    """A Consent (or a policy) that the other form cannot express: refused, never dropped."""

    status = 422
    issue = "not-supported"


class AuthError(FhirError):
    """No token, or a token that does not verify (HTTP 401)."""

    status = 401
    issue = "login"


class ScopeError(FhirError):
    """A valid token whose scopes do not cover the request (HTTP 403)."""

    status = 403
    issue = "forbidden"


def operation_outcome(message: str, *, issue: str = "processing", severity: str = "error",
                      expression: str | None = None, rule: str | None = None) -> dict[str, Any]:
    """An R4 OperationOutcome with one issue (``rule``: the policy rule that decided, as a detail coding)."""
    entry: dict[str, Any] = {"severity": severity, "code": issue, "diagnostics": message}
    if expression:
        entry["expression"] = [expression]
    if rule:
        entry["details"] = {"coding": [{"system": "https://emrshare.org/fhir/CodeSystem/policy-rule",
                                        "code": rule}],
                            "text": f"decided by policy rule {rule!r}"}
    return {"resourceType": "OperationOutcome", "issue": [entry]}
