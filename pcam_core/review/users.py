"""The people a signed-in app knows, and what each may do: the provider says who someone is, the app says
what they may do.

Roles: "admin" (everything: users, settings, jobs, exports, blind mode, the audit trail), "reviewer"
(verdicts, notes, tags, regions) and "viewer" (looks, answers nothing). A user is made on first sign-in, a
reviewer, or an admin when their e-mail or subject is among the configured first admins. An admin can
change a role or deactivate someone; a deactivated user is refused on every run, whatever their cookie
says. Every change is an event in the audit trail.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from pcam_core.review.agreement import reviewer_key
from pcam_core.review.store import ReviewStore, meta, now, users

names = sa.Table("names", meta, sa.Column("seq", sa.Integer, primary_key=True),
                 *(sa.Column(c, sa.Text) for c in ("name_key", "user_id", "by_name", "created")))

ROLES = ("admin", "reviewer", "viewer")
MAY = {  # what each role may do
    "admin": {"review", "run jobs", "export", "administer"},
    "reviewer": {"review"},
    "viewer": set(),
}


@dataclass(frozen=True)
class Member:
    id: str  # issuer|subject
    name: str
    email: str
    role: str
    active: bool

    def may(self, action: str) -> bool:
        return self.active and action in MAY[self.role]

    @property
    def label(self) -> str:
        """How a page lists them: name and e-mail (or identity)."""
        return f"{self.name} ({self.email or self.id})"


def _member(row) -> Member:
    return Member(row.id, row.name, row.email, row.role, bool(row.active))


def signed_in(store: ReviewStore, user_id: str, name: str, email: str = "",
              first_admins: tuple[str, ...] = (), signed_at: str = "") -> Member:
    """The member for a sign-in: made on first sign-in (an admin when named in `first_admins`, by e-mail or
    subject), their name and e-mail kept current. `signed_at` tells one sign-in from the next (the ID
    token's time): each sign-in is one event, however many pages it opens."""
    subject = user_id.rsplit("|", 1)[-1]
    with store.errors("signing in"), store.begin() as con:
        row = con.execute(sa.select(users).where(users.c.id == user_id)).first()
        new_sign_in = row is None or not signed_at or row.last_seen != signed_at
        if row is None:
            role = "admin" if {email, subject} & set(first_admins) - {""} else "reviewer"
            con.execute(users.insert().values(id=user_id, name=name, email=email, role=role, active=True,
                                              created=now(), last_seen=signed_at or now()))
        else:
            con.execute(users.update().where(users.c.id == user_id).values(name=name, email=email,
                                                                           last_seen=signed_at or now()))
        row = con.execute(sa.select(users).where(users.c.id == user_id)).one()
    member = _member(row)
    if member.active and new_sign_in:
        store.log("sign-in", name, {"role": member.role}, user_id, True)
    return member


def member(store: ReviewStore, user_id: str) -> Member | None:
    with store.errors("reading the users"), store.reading() as con:
        row = con.execute(sa.select(users).where(users.c.id == user_id)).first()
    return None if row is None else _member(row)


def everyone(store: ReviewStore) -> list[Member]:
    with store.errors("reading the users"), store.reading() as con:
        return [_member(r) for r in con.execute(sa.select(users).order_by(users.c.created))]


def change(store: ReviewStore, admin: Member, user_id: str, role: str | None = None,
           active: bool | None = None) -> Member:
    """An admin's change to a user (role and/or active), kept in the audit trail. An admin cannot take
    away the last active admin (the app would have no one to administer it)."""
    if not admin.may("administer"):
        raise PermissionError(f"{admin.name} is a {admin.role}: only an admin changes users")
    if role is not None and role not in ROLES:
        raise ValueError(f"a role is one of {list(ROLES)}, got {role!r}")
    target = member(store, user_id)
    if target is None:
        raise ValueError(f"no user {user_id!r}: they appear once they have signed in")
    after = Member(target.id, target.name, target.email, role or target.role,
                   target.active if active is None else active)
    admins = [m for m in everyone(store) if m.role == "admin" and m.active and m.id != user_id]
    if not admins and not (after.role == "admin" and after.active):
        raise ValueError("that would leave no active admin: make someone else an admin first")
    with store.errors("changing the user"), store.begin() as con:
        con.execute(users.update().where(users.c.id == user_id).values(role=after.role, active=after.active))
    detail = {"user": target.name, "id": user_id, "role": [target.role, after.role],
              "active": [target.active, after.active]}
    store.log("user changed", admin.name, detail, admin.id, True)
    return after


def map_name(store: ReviewStore, admin: Member, typed: str, user_id: str) -> Member:
    """Says that the name `typed` (given in local mode, unverified) was the person `user_id`: from now on the
    pages count that name's verdicts as theirs. The rows themselves are kept as written."""
    if not admin.may("administer"):
        raise PermissionError(f"{admin.name} is a {admin.role}: only an admin maps names to people")
    person = member(store, user_id)
    if person is None or not typed.strip():
        raise ValueError("name a typed reviewer name and a person who has signed in")
    with store.errors("mapping the name"), store.begin() as con:
        con.execute(names.insert().values(name_key=reviewer_key(typed), user_id=user_id, by_name=admin.name,
                                          created=now()))
    store.log("name mapped", admin.name, {"typed": typed, "to": person.name, "id": user_id}, admin.id, True)
    return person


def mapped_names(store: ReviewStore) -> dict[str, str]:
    """{typed name key: the person's name} for every typed name mapped to a person (the latest mapping)."""
    query = sa.select(names.c.name_key, users.c.name).join(users, users.c.id == names.c.user_id) \
        .order_by(names.c.seq)
    with store.errors("reading the names"), store.reading() as con:
        return {key: name for key, name in con.execute(query)}
