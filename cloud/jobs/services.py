"""What tasks work with, handed to each worker as procrastinate's ``additional_context``."""

from __future__ import annotations

from dataclasses import dataclass

from procrastinate import JobContext

from cloud.ai.provider import Provider
from cloud.config import CloudSettings
from cloud.db.database import Database
from cloud.jobs.queue import JobQueue

KEY = "smartfarm"


@dataclass
class JobServices:
    db: Database
    settings: CloudSettings
    queue: JobQueue
    provider: Provider


def services_of(context: JobContext) -> JobServices:
    services = context.additional_context.get(KEY)
    assert isinstance(services, JobServices), "worker started without smartfarm services"
    return services
