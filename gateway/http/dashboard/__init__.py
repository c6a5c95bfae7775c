"""The web dashboard: server-rendered pages over the same queries as the JSON APIs.

`session` signs people in and out (signed cookie, CSRF), `figures` computes what pages show,
`pages` renders them, `forms` handles what they post, `assets` serves the static files.
"""
