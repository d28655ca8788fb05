"""validation sets, per-version metrics, rejected versions, the publication policy

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('status', sa.String(length=20), nullable=False,
                                      server_default='published'))
        batch_op.add_column(sa.Column('validation_sha', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('validation_size', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('validation', sa.JSON(), nullable=True))

    with op.batch_alter_table('rounds', schema=None) as batch_op:
        batch_op.add_column(sa.Column('max_regression', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('rounds', schema=None) as batch_op:
        batch_op.drop_column('max_regression')

    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.drop_column('validation')
        batch_op.drop_column('validation_size')
        batch_op.drop_column('validation_sha')
        batch_op.drop_column('status')
