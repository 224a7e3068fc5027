"""Invitation emails: the link an invitee opens to choose a password, sent through the cloud's
SMTP server when one is configured (``notify.smtp``). Without one, or when sending fails, the
owner copies the link from the page instead; the answer says which."""

from __future__ import annotations

import logging
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Literal

from pydantic import BaseModel, Field

from cloud.notify.delivery import DeliveryFailed
from cloud.notify.email import deliver
from cloud.notify.settings import SmtpConfig

log = logging.getLogger(__name__)


class InviteEmailOut(BaseModel):
    status: Literal["sent", "failed", "off"] = Field(
        description="off: this cloud has no mail server; copy the link from the answer instead"
    )
    detail: str


def invite_message(
    config: SmtpConfig, to: str, *, link: str, farm: str, inviter: str, role: str
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = config.sender
    msg["To"] = to
    msg["Subject"] = f"[smartfarm] {inviter} invites you to {farm}"
    msg["Message-ID"] = make_msgid(domain="smartfarm")
    msg.set_content(
        f"{inviter} invites you to the farm {farm} on smartfarm, as {role}.\n\n"
        f"Open this link to choose a password and sign in (it works once, for 7 days):\n"
        f"{link}\n\nIf you did not expect this, ignore this email.\n"
    )
    return msg


async def send_invite(
    config: SmtpConfig, to: str, *, link: str, farm: str, inviter: str, role: str
) -> InviteEmailOut:
    if config.host is None:
        return InviteEmailOut(status="off", detail="no mail server configured: send the link")
    try:
        await deliver(
            config, invite_message(config, to, link=link, farm=farm, inviter=inviter, role=role)
        )
    except DeliveryFailed as exc:
        log.warning("invitation email to %s failed: %s", to, exc)
        return InviteEmailOut(status="failed", detail=f"not emailed ({exc}): send the link")
    return InviteEmailOut(status="sent", detail=f"emailed to {to}")
