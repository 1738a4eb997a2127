"""factory_boy factories for rows. Each test binds them to its own session."""

from __future__ import annotations

from datetime import UTC, datetime

import factory
from factory.alchemy import SQLAlchemyModelFactory
from sqlalchemy.orm import Session

from db.models import (
    InferenceRequest,
    Model,
    ModelReplica,
    Node,
    NodeStatus,
    RequestKind,
    Role,
    User,
    UserSession,
)

# bcrypt of "correct-horse-battery" at cost 4: hashing at the real cost in every factory call
# would dominate the suite's run time.
TEST_PASSWORD = "correct-horse-battery"
TEST_PASSWORD_HASH = "$2b$04$s.1HTTE6hDzaftUfIbGOl.27tsNEXedqsNI7ykhBANQJeIUxsx.ee"

_session: Session | None = None


def bind(session: Session | None) -> None:
    global _session
    _session = session


def _current_session() -> Session:
    if _session is None:
        raise RuntimeError("factories are not bound: use the db_session fixture")
    return _session


class BaseFactory(SQLAlchemyModelFactory):
    class Meta:
        abstract = True
        sqlalchemy_session_factory = _current_session
        sqlalchemy_session_persistence = "flush"


class UserFactory(BaseFactory):
    class Meta:
        model = User

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda user: f"{user.username}@example.com")
    password_hash = TEST_PASSWORD_HASH
    role = Role.USER


class UserSessionFactory(BaseFactory):
    class Meta:
        model = UserSession

    user = factory.SubFactory(UserFactory)
    refresh_jti = factory.Faker("uuid4")
    family_id = factory.Faker("uuid4", cast_to=None)
    expires_at = factory.LazyFunction(lambda: datetime(2099, 1, 1, tzinfo=UTC))


class ModelFactory(BaseFactory):
    class Meta:
        model = Model

    name = factory.Sequence(lambda n: f"model{n}:latest")
    tags = factory.LazyFunction(list)
    parameters = factory.LazyFunction(dict)


class NodeFactory(BaseFactory):
    class Meta:
        model = Node

    name = factory.Sequence(lambda n: f"gpu{n}@host")
    hostname = "host"
    gpu_index = factory.Sequence(lambda n: n)
    engine_url = "http://127.0.0.1:11434"
    status = NodeStatus.ONLINE
    slots = 2


class ModelReplicaFactory(BaseFactory):
    class Meta:
        model = ModelReplica

    model = factory.SubFactory(ModelFactory)
    node = factory.SubFactory(NodeFactory)


class InferenceRequestFactory(BaseFactory):
    class Meta:
        model = InferenceRequest

    user_id = None
    model_name = "llama3.2:latest"
    kind = RequestKind.GENERATE
    input = factory.LazyFunction(lambda: {"prompt": "Why is the sky blue?"})
