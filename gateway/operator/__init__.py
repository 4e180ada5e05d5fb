"""The operator's side: lifecycle service, evidence packs, admin API, wallboard."""
