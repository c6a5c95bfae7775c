"""The web dashboard: server-rendered pages over the same queries as the JSON APIs.

`session` signs sessions (cookie, CSRF), `auth` says who is looking, `figures` and `charts`
compute what pages show, `pages` renders them (through `render`, with `filters`), `forms`
handles what they post, `assets` serves the static files. Routes: `routes.py`.
"""
