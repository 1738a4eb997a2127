"""The password policy: length rules, the account's own details, and zxcvbn's estimate."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.factories import TEST_PASSWORD
from tests.support.identity import auth_headers, make_user
from web.security.passwords import password_problems

REGISTER = "/api/v1/auth/register"
PROFILE = "/api/v1/users/profile"
CAROL = {"username": "carol", "email": "carol.smith@example.com"}


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        (" " * 10, "whitespace only"),
        ("\t \n" * 4, "whitespace only"),
        ("carolXXXXX", "too easy to guess"),
        ("carol.smith@example.com", "must not be the email"),
        ("smithcarol1", "too easy to guess"),
        ("qwertyuiop", "too common"),
        ("Summer2024!", "too easy to guess"),
        ("aaaaaaaaaaaa", "too easy to guess"),
        ("short", "at least 10"),
        ("é" * 40, "at most 72 bytes"),
    ],
)
def test_weak_passwords_are_refused(password: str, reason: str) -> None:
    problems = password_problems(password, min_score=3, **CAROL)
    assert any(reason in problem for problem in problems), problems


@pytest.mark.parametrize(
    "password",
    [TEST_PASSWORD, "plenty-long-pass", "  a brand new passphrase  ", "gravel owl teapot 9"],
)
def test_strong_passwords_pass(password: str) -> None:
    assert password_problems(password, min_score=3, **CAROL) == []


def test_the_estimate_knows_the_account_it_is_for() -> None:
    """A password built from someone else's name may be fine; from one's own, it is not."""
    password = "zanzibarquokka"
    assert password_problems(password, min_score=3, username="dave") == []
    assert password_problems(password, min_score=3, username="zanzibarquokka1") != []
    assert password_problems(password, min_score=3, email="zanzibarquokka@example.com") != []


def test_the_minimum_score_is_a_setting(app_factory: Callable[..., Flask]) -> None:
    lenient = app_factory(password_min_score=0).test_client()
    strict = app_factory(password_min_score=4).test_client()
    body = {**CAROL, "password": "Summer2024!x"}

    assert lenient.post(REGISTER, json=body).status_code == 201
    refused = strict.post(REGISTER, json={**body, "username": "carol2"})
    assert refused.status_code == 422
    assert "too easy to guess" in str(refused.get_json()["error"]["details"])


def test_registration_checks_the_email_too(client: FlaskClient) -> None:
    body = {"username": "dana", "email": "tangerine.walrus@example.com"}
    response = client.post(REGISTER, json={**body, "password": "tangerine.walrus"})
    assert response.status_code == 422
    assert "too easy to guess" in str(response.get_json()["error"]["details"])


def test_a_new_password_follows_the_policy(client: FlaskClient) -> None:
    user = make_user()
    headers = auth_headers(client, user)
    response = client.put(
        PROFILE,
        headers=headers,
        json={"current_password": TEST_PASSWORD, "new_password": " " * 12},
    )
    assert response.status_code == 422
    assert "whitespace only" in str(response.get_json()["error"]["details"])
