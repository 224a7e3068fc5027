"""Email delivery over SMTP (aiosmtplib): plain-text messages, STARTTLS or TLS as configured.

Connection problems and 4xx answers are transient (the job retries with backoff); a 5xx answer
(unknown mailbox, refused sender) or a failed login is final.
"""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import make_msgid

import aiosmtplib

from cloud.notify.delivery import DeliveryFailed, Notice
from cloud.notify.settings import SmtpConfig


def message(config: SmtpConfig, to: str, notice: Notice) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = config.sender
    msg["To"] = to
    msg["Subject"] = f"[smartfarm] {notice.title}"
    msg["Message-ID"] = make_msgid(domain="smartfarm")
    lines = [notice.body, "", f"severity: {notice.severity}"]
    if notice.link:
        lines.append(notice.link)
    msg.set_content("\n".join(lines) + "\n")
    return msg


async def send_email(config: SmtpConfig, to: str, notice: Notice) -> None:
    await deliver(config, message(config, to, notice))


async def deliver(config: SmtpConfig, msg: EmailMessage) -> None:
    """Send one message through the configured server; DeliveryFailed says why not."""
    if config.host is None:
        raise DeliveryFailed("email is not configured (notify.smtp.host)", transient=False)
    password = config.password.get_secret_value() if config.password else None
    try:
        await aiosmtplib.send(
            msg,
            hostname=config.host,
            port=config.port,
            username=config.username,
            password=password,
            use_tls=config.use_tls,
            start_tls=config.starttls and not config.use_tls,
            timeout=config.timeout_s,
        )
    except aiosmtplib.SMTPAuthenticationError as exc:
        raise DeliveryFailed(f"SMTP login refused: {exc.code}", transient=False) from exc
    except aiosmtplib.SMTPResponseException as exc:
        raise DeliveryFailed(
            f"SMTP {exc.code}: {exc.message}", transient=400 <= exc.code < 500
        ) from exc
    except (aiosmtplib.SMTPException, OSError) as exc:  # connect, timeout, TLS, network
        raise DeliveryFailed(f"SMTP unreachable: {exc}", transient=True) from exc
