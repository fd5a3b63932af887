"""GET /healthz (GET /metrics is mounted by the app: it depends on the mode)."""

from fastapi import APIRouter
from sqlalchemy import text

from marketplace.deps import Session
from marketplace.errors import ErrorOut
from marketplace.schemas import Health

router = APIRouter(tags=["system"])


@router.get("/healthz", responses={503: {"model": ErrorOut}})
async def healthz(session: Session) -> Health:
    """The database answers."""
    await session.execute(text("SELECT 1"))
    return Health(status="ok")
