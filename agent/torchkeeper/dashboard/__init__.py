"""The local dashboard: a front end in the browser, served by the agent on 127.0.0.1 while it
is used (server.py), with pages (pages.py) and the rules of who may talk to it (security.py)."""
