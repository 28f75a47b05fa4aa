# meta1lite.smar - MeTA1's address resolver: resolver.py (AddressResolver: local
# domains, aliases, the route of a recipient and its next hops), routes.py (Route,
# Hop, route matching), aliases.py (the aliases file), dnsresolve.py (MX and
# address lookups, imported at the first name lookup) and dnsbase.py (its errors and
# address literals). Nothing is imported here, so a helper loads alone.
