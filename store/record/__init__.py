"""The pilot run as a record (issue 26): who may write (people.py), the hash-chained audit
trail every write appends to (audit.py), runs with their protocol versions and approvals
(runs.py), deviations, dispositions and remarks, sign-offs, the run's report with those
sections (report.py), the HTTP routes (api.py) and `collector store audit|runs` (cli.py).

docs/pilot-record.md documents the API, the people config, the audit check and the states.
"""
