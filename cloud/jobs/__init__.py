"""Background jobs on procrastinate (PostgreSQL, no broker): the task table and schedule, the
queue handle the API defers with, and the workers (in the API process or standalone)."""
