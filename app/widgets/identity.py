"""Who is using the app, answered in one place (`current_user`): the pages ask it, tests stand in for it.

Local mode (no [auth] section in the app's secrets): the reviewer is the name typed in the sidebar,
unverified, and the app serves this machine only (`refusal`: app/server.py will not start on another
address). With an [auth] section, Streamlit's own OpenID Connect sign-in (`st.login`, Authlib): every page
asks to sign in first, and the reviewer is the provider's verified identity, kept as issuer and subject
and shown by name or e-mail. The identity cookie is Streamlit's, signed with the section's cookie_secret:
a cookie changed by hand is no sign-in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import streamlit as st

from pcam_core.review.users import MAY, Member

LOCAL_ADDRESSES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class User:
    name: str  # shown, and kept with each verdict
    id: str = ""  # the provider's issuer|subject; "" for a typed name
    verified: bool = False  # a sign-in provider vouched for it
    role: str = "admin"  # local mode: the one person at this machine may do everything
    member: Member | None = None  # with sign-in: the app's record of them (role, active)

    def may(self, action: str) -> bool:
        """Whether this user may `action` ("review", "run jobs", "export", "administer")."""
        return self.member.may(action) if self.member is not None else action in MAY[self.role]


def first_admins() -> tuple[str, ...]:
    """The e-mails or subjects made admins on their first sign-in: $PCAM_ADMINS (comma-separated) and
    `admins` in the secrets' [pcam] section."""
    named = [a.strip() for a in os.environ.get("PCAM_ADMINS", "").split(",")]
    try:
        named += list(st.secrets.get("pcam", {}).get("admins", []))
    except (FileNotFoundError, st.errors.StreamlitSecretNotFoundError):
        pass
    return tuple(a for a in named if a)


def auth_configured() -> bool:
    """Whether sign-in is set up: an [auth] section in the app's secrets."""
    try:
        return "auth" in st.secrets
    except (FileNotFoundError, KeyError, st.errors.StreamlitSecretNotFoundError):
        return False


def signed_in() -> User | None:
    """The signed-in user with their role, or None (no sign-in set up, or nobody signed in). Checked on
    every run: a user an admin deactivated gets a page saying so and nothing else (st.stop)."""
    if not auth_configured() or not st.user.get("is_logged_in"):
        return None
    from app.widgets.reviews import review_store
    from pcam_core.review import users

    subject, issuer = str(st.user.get("sub") or ""), str(st.user.get("iss") or "")
    name, email = str(st.user.get("name") or st.user.get("email") or subject), str(st.user.get("email") or "")
    user_id = f"{issuer}|{subject}"
    store = review_store()
    if st.session_state.get("signed_in_as") != user_id:  # the first run of this sign-in
        member = users.signed_in(store, user_id, name, email, first_admins(), str(st.user.get("iat") or ""))
        st.session_state["signed_in_as"] = user_id
    else:
        member = users.member(store, user_id)
    if member is None or not member.active:
        st.title("PCam Review")
        st.error(f"{name}: your access to this app was withdrawn by an admin. Ask them to restore it.")
        st.button("Sign out", key="sign_out_refused", on_click=st.logout)
        st.stop()
    return User(name, user_id, True, member.role, member)


def current_user(typed: str = "") -> User:
    """Who gives verdicts now: the signed-in user, else (local mode) the name typed in the sidebar."""
    return signed_in() or User(typed.strip())


def sign_in_page() -> None:
    """With sign-in set up and nobody signed in: the sign-in page instead of the app (st.stop)."""
    if not auth_configured() or st.user.get("is_logged_in"):
        return
    st.title("PCam Review")
    st.write("Sign in to review: your verdicts are kept under your name as your organisation's sign-in "
             "gives it.")
    st.button("Sign in", key="sign_in", type="primary", icon=":material/login:", on_click=st.login)
    st.stop()


def refusal(address: str | None) -> str | None:
    """Why the app must not serve on `address` (None: it may): another address than this machine's needs
    sign-in, or any visitor could review under any name and reach the server's files."""
    if not address or address in LOCAL_ADDRESSES or auth_configured():
        return None
    return (f"refusing to serve PCam Review on {address} without sign-in: add an [auth] section "
            "(redirect_uri, cookie_secret, client_id, client_secret, server_metadata_url of your OpenID "
            "Connect provider) to .streamlit/secrets.toml, see README 'Team deployment', or serve on "
            "localhost")
