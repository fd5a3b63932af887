"""A gig marketplace on FastAPI + SQLAlchemy 2 (asyncio): ormtune's reference application.

Clients post jobs, workers apply, clients pay workers (pending, then confirmed by the payer)
and both sides review each other. The same route code runs in three modes
(:class:`marketplace.settings.Settings`): ``naive`` (plain lazy loading), ``tuned``
(ormtune installed: autoload, the query cache, metrics) and ``handwritten`` (explicit loader
options in the repositories). See docs/marketplace.md.
"""
