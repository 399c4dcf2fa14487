"""A FHIR R4 facade for emrshare's agents (issue 17; docs/fhir.md).

Hospital integration engines and SMART apps speak FHIR: this package lets them
talk to a patient's agent (store a transaction Bundle, read and set the policy
as a Consent, read the audit trail as AuditEvents) and to doctors' agents
(``$everything``, type searches and reads, answered under the doctor's grants).

Modules: ``app`` (the Starlette app served by Hypercorn on trio, and the
agent calls it makes), ``auth`` (bearer JWTs, SMART scopes), ``consent``
(Consent <-> policy, pure), ``audit`` (ledger event -> AuditEvent, pure),
``emergency`` (the ``$break-glass`` operation's Parameters, pure),
``labels`` (resource -> label and record id, pure), ``bundles`` (transaction
in, searchset out, pure), ``errors`` (OperationOutcome). The pure modules need
no FHIR library; the app validates with ``fhir.resources`` (R4B models).

This face exports the pure parts only, so that ``emrshare ledger audit --fhir``
and a Consent conversion work without the ``fhir`` extra; the server is
``agents.fhir.app.Facade`` (with ``FacadeConfig``) and
``agents.fhir.auth.TokenVerifier``, which need it (``pip install 'emrshare[fhir]'``).
"""

from .audit import audit_bundle as audit_bundle
from .audit import audit_event as audit_event
from .bundles import plan_transaction as plan_transaction
from .bundles import resource_bytes as resource_bytes
from .consent import consent_to_policy as consent_to_policy
from .consent import policy_to_consent as policy_to_consent
from .emergency import break_glass_parameters as break_glass_parameters
from .emergency import parse_break_glass as parse_break_glass
from .errors import AuthError as AuthError
from .errors import ConsentMappingError as ConsentMappingError
from .errors import FhirError as FhirError
from .errors import ScopeError as ScopeError
from .errors import operation_outcome as operation_outcome
from .labels import DEFAULT_LABELS as DEFAULT_LABELS
from .labels import FHIR_MEDIA_TYPE as FHIR_MEDIA_TYPE
from .labels import LabelMap as LabelMap
from .labels import LabelMapError as LabelMapError
from .labels import record_id_for as record_id_for
