"""Jobs: the list (filters, keyset pages), one job with its applications, posting, applying."""

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query

from marketplace.deps import CurrentUser, PathId, Repos, Session
from marketplace.errors import responses
from marketplace.models import utcnow
from marketplace.repositories import (
    ApplicationRepository,
    JobDetailRepository,
    JobListRepository,
    JobPageRepository,
)
from marketplace.schemas import MAX_INT, ApplicationIn, ApplicationOut, JobDetail, JobIn, JobPage
from marketplace.views import application_out, job_detail, job_summary

router = APIRouter(tags=["jobs"])


@router.get("/jobs", responses=responses())
async def list_jobs(
    _: CurrentUser,
    session: Session,
    repos: Repos,
    status: Literal["open", "closed"] | None = None,
    client_id: Annotated[int | None, Query(ge=1, le=MAX_INT)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=500)] = None,
) -> JobPage:
    """Jobs, newest first, optionally by status and client; pass the page's ``next`` as
    ``after`` for the following page."""
    filters: dict[str, object] = {}
    if status is not None:
        filters["status"] = status
    if client_id is not None:
        filters["client_id"] = client_id
    page = await repos(JobPageRepository, session).page(filters=filters, limit=limit, after=after)
    return JobPage(items=[await job_summary(j) for j in page.items], next=page.next_cursor)


@router.get("/jobs/{job_id}", responses=responses(_404="no such job"))
async def get_job(job_id: PathId, _: CurrentUser, session: Session, repos: Repos) -> JobDetail:
    """A job with its client and its applications (with the applicants)."""
    job = await repos(JobDetailRepository, session).get_or_none(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id}")
    return await job_detail(job)


@router.post("/jobs", status_code=201, responses=responses(_403="workers cannot post"))
async def create_job(body: JobIn, user: CurrentUser, session: Session, repos: Repos) -> JobDetail:
    """Post a job (clients only)."""
    if user.role != "client":
        raise HTTPException(403, "only clients post jobs")
    job = await repos(JobListRepository, session).create(
        client_id=user.id,
        title=body.title,
        description=body.description,
        budget_cents=body.budget_cents,
        status="open",
        created_at=utcnow(),
    )
    await session.commit()
    return await job_detail(job)


@router.post(
    "/jobs/{job_id}/apply",
    status_code=201,
    responses=responses(
        _403="clients cannot apply",
        _404="no such job",
        _409="the job is closed, or you already applied",
    ),
)
async def apply(
    job_id: PathId, body: ApplicationIn, user: CurrentUser, session: Session, repos: Repos
) -> ApplicationOut:
    """Apply to an open job (workers only, once per job)."""
    if user.role != "worker":
        raise HTTPException(403, "only workers apply to jobs")
    job = await repos(JobListRepository, session).get_or_none(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id}")
    if job.status != "open":
        raise HTTPException(409, f"job {job_id} is closed")
    application = await repos(ApplicationRepository, session).create(
        job_id=job_id,
        worker_id=user.id,
        cover_letter=body.cover_letter,
        bid_cents=body.bid_cents,
        created_at=utcnow(),
    )
    await session.commit()
    return await application_out(application)
