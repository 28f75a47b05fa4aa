# meta1lite.smtps - MeTA1's SMTP server module: server.py (listeners, admission,
# stop), session.py (one SMTP connection around proto.smtp_server), policy.py
# (who may relay; the per-client message rate) and authdb.py (AUTH users: PBKDF2
# hashes, lockout). Nothing is imported here, so a helper loads alone.
