"""numbers that carry over: surface distances (hd95, assd) per frame; threshold calibrations

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 22:20:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('metrics', schema=None) as batch_op:
        batch_op.add_column(sa.Column('hd95', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('assd', sa.Float(), nullable=True))

    op.create_table('calibrations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_key', sa.String(length=80), nullable=False),
    sa.Column('threshold', sa.Float(), nullable=False),
    sa.Column('run_name', sa.String(length=200), nullable=False),
    sa.Column('n_frames', sa.Integer(), nullable=False),
    sa.Column('dice', sa.Float(), nullable=False),
    sa.Column('image_sha256s', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_calibrations'))
    )
    with op.batch_alter_table('calibrations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_calibrations_model_key'), ['model_key'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('calibrations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_calibrations_model_key'))
    op.drop_table('calibrations')

    with op.batch_alter_table('metrics', schema=None) as batch_op:
        batch_op.drop_column('assd')
        batch_op.drop_column('hd95')
