"""Test kits for emrshare and for those who embed it: synthetic FHIR R4 data."""
