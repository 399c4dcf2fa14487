"""Test kits for emrshare and for those who embed it: synthetic FHIR R4 data (``fhir``), consortium
fixtures (``consortium``), the protocol double (``double``), the hostile-client kit (``hostile``),
a SMART-style token issuer for the FHIR facade (``smart``), a strict Prometheus text-format reader
(``promtext``) and a clock that moves only when told (``clock``)."""
