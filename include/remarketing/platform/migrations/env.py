"""Alembic environment for the remarketing DB; run through remarketing.platform.state.upgrade()."""

from alembic import context

from remarketing.platform.state import VERSION_TABLE, state_metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=state_metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
