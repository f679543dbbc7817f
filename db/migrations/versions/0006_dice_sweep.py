"""dice sweep: each frame's Dice at fixed thresholds, stored by the worker with its metrics

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 01:40:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('metrics', schema=None) as batch_op:
        batch_op.add_column(sa.Column('dice_sweep', sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('metrics', schema=None) as batch_op:
        batch_op.drop_column('dice_sweep')
