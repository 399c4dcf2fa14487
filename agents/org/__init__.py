"""Per-organization material: each hospital makes and keeps its own keys.

* :func:`init_org` (``emrshare org init``): an organization's admin key (signs
  the consortium configuration), registrar key (signs enrollment tokens), its
  nodes' keys, a TLS CA and node certificates, all encrypted at rest
  (:class:`Unlock`: passphrase or key file, never inside the directory), and
  the public :class:`OrgProfile`. :class:`OrgDir` reads it back.
* :func:`build_config`, :func:`draft`, :func:`sign_draft`, :func:`seal`
  (``emrshare consortium genesis|sign|seal``): the genesis built from the
  members' profiles and signed by each; :func:`manifest_for` and
  :func:`genesis_manifest` give the clients' view of it.
* :func:`issue_token` (``emrshare registrar issue``) and :class:`TokenFile`: an
  enrollment token bound to the subject's enrolling key, with the subject's TLS
  client certificate when its :class:`EnrollRequest` gave a TLS key
  (:func:`new_user_tls_key` makes one; :func:`check_user_cert` is the user's check).
* :func:`make_user_cert` and :func:`user_tls`: a user's TLS client certificate from its
  organization's TLS CA (URI SAN ``emrshare:agent:<subject>``); :func:`key_to_pem`: a
  TLS key store's PKCS#8 as PEM, for an ``ssl`` context in memory.
* :func:`cert_agent_ids`: the agent ids a node's TLS certificate names (URI SANs
  ``emrshare:agent:<id>``), for checking a peer's certificate against the id it claims.
* :func:`change_draft`, :func:`sign_change`, :class:`ConfigChange`
  (``emrshare consortium change|sign-change``) and :func:`config_transaction`:
  adding or removing a member later, signed by more than half of the members.
"""

from agents.org._change import ConfigChange, change_draft, config_transaction, sign_change
from agents.org._genesis import build_config, draft, genesis_manifest, manifest_for, read_draft, seal, sign_draft
from agents.org._material import (ROLES, NodeProfile, OrgDir, OrgError, OrgProfile, Unlock, default_node_ids,
                                  init_org)
from agents.org._registrar import (USER_CERT_DAYS, EnrollRequest, TokenFile, check_user_cert, issue_token,
                                   new_user_tls_key, parse_enroll_key, parse_tls_key,
                                   tls_public_pem)
from agents.org._tls import AGENT_URI_PREFIX, cert_agent_ids, key_to_pem, make_user_cert, user_tls

__all__ = ["AGENT_URI_PREFIX", "cert_agent_ids", "key_to_pem", "make_user_cert", "user_tls", "ConfigChange", "change_draft", "config_transaction", "sign_change", "ROLES", "NodeProfile", "OrgDir", "OrgError", "OrgProfile", "TokenFile", "Unlock", "build_config",
           "default_node_ids", "draft", "genesis_manifest", "init_org", "issue_token", "manifest_for",
           "parse_enroll_key", "read_draft", "seal", "sign_draft", "USER_CERT_DAYS", "EnrollRequest",
           "check_user_cert", "new_user_tls_key", "parse_tls_key", "tls_public_pem"]
