"""The people a signed-in app knows: made on first sign-in (an admin when named so), roles an admin
changes, deactivation kept, never no admin at all; every change and sign-in in the audit trail."""

from __future__ import annotations

import pytest

from pcam_core.data.readers import open_dataset
from pcam_core.review import users
from pcam_core.review.store import ReviewStore

pytest_plugins = ["apptest"]
ISSUER = "https://login.example.org"


@pytest.fixture
def store(tmp_path) -> ReviewStore:
    return ReviewStore(tmp_path / "reviews.sqlite")  # the one the app's tests open


def test_first_sign_in_makes_a_reviewer_or_a_named_admin(store):
    admins = ("alice@lab.test",)
    alice = users.signed_in(store, f"{ISSUER}|alice", "Alice", "alice@lab.test", first_admins=admins)
    bob = users.signed_in(store, f"{ISSUER}|bob", "Bob", "bob@lab.test", first_admins=admins)
    assert (alice.role, bob.role) == ("admin", "reviewer")
    assert alice.may("administer") and alice.may("run jobs") and bob.may("review")
    assert not bob.may("administer") and not bob.may("export") and not bob.may("run jobs")
    again = users.signed_in(store, f"{ISSUER}|bob", "Robert", "bob@lab.test", first_admins=("bob@lab.test",))
    assert (again.name, again.role) == ("Robert", "reviewer")  # later: the name kept current, not the role
    assert store.events("sign-in")["actor"].tolist() == ["Alice", "Bob", "Robert"]
    users.signed_in(store, f"{ISSUER}|bob", "Robert", "bob@lab.test", signed_at="1765000000")
    users.signed_in(store, f"{ISSUER}|bob", "Robert", "bob@lab.test", signed_at="1765000000")  # another page
    assert len(store.events("sign-in")) == 4  # one event a sign-in


def test_an_admin_changes_roles_and_deactivates_but_never_leaves_no_admin(store):
    alice = users.signed_in(store, f"{ISSUER}|alice", "Alice", first_admins=("alice",))
    bob = users.signed_in(store, f"{ISSUER}|bob", "Bob")
    with pytest.raises(PermissionError, match="only an admin"):
        users.change(store, bob, alice.id, role="viewer")
    viewer = users.change(store, alice, bob.id, role="viewer")
    assert viewer.role == "viewer" and not viewer.may("review")
    gone = users.change(store, alice, bob.id, active=False)
    assert not gone.active and not gone.may("review") and users.member(store, bob.id).active is False
    with pytest.raises(ValueError, match="no active admin"):
        users.change(store, alice, alice.id, role="reviewer")
    with pytest.raises(ValueError, match="no active admin"):
        users.change(store, alice, alice.id, active=False)
    with pytest.raises(ValueError, match="one of"):
        users.change(store, alice, bob.id, role="owner")
    with pytest.raises(ValueError, match="once they have signed in"):
        users.change(store, alice, f"{ISSUER}|carol", role="admin")
    changes = store.events("user changed")
    assert len(changes) == 2 and (changes["actor"] == "Alice").all() and changes["verified"].all()
    assert users.signed_in(store, bob.id, "Bob").active is False  # signing in again changes nothing


def test_a_typed_name_mapped_to_a_person_counts_as_theirs_on_the_pages(store, open_app, demo_dir):
    alice = users.signed_in(store, f"{ISSUER}|alice", "Alice Adams", first_admins=("alice",))
    bob = users.signed_in(store, f"{ISSUER}|bob", "Bob Brown")
    key = str(demo_dir.resolve())
    p1, p2 = (str(i) for i in open_dataset(demo_dir).ids[:2])
    store.record(key, p1, "tumour", " ALICE ")  # typed in local mode, before sign-in existed
    store.record(key, p2, "tumour", "Alice Adams", reviewer_id=alice.id, verified=True)
    store.record(key, p1, "normal", "Bob Brown", reviewer_id=bob.id, verified=True)
    with pytest.raises(PermissionError):
        users.map_name(store, bob, "alice", alice.id)
    users.map_name(store, alice, "alice", alice.id)
    assert users.mapped_names(store) == {"alice": "Alice Adams"}
    assert store.history(key)["reviewer"].tolist() == ["ALICE", "Alice Adams", "Bob Brown"]  # rows as written
    at = open_app("reviewers")
    people = next(f.value for f in at.dataframe if "agrees with the label" in f.value.columns)
    assert sorted(people["reviewer"]) == ["Alice Adams", "Bob Brown"]  # one Alice, with both her patches
    assert int(people.set_index("reviewer").loc["Alice Adams", "patches"]) == 2
    assert store.events("name mapped")["actor"].tolist() == ["Alice Adams"]
