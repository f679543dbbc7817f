"""dicom results: one SEG per source instance of a PACS run, with its delivery state

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 22:15:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'dicom_results',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('run_id', sa.Integer(), nullable=False),
        sa.Column('source_key', sa.String(length=200), nullable=False),
        sa.Column('source_sop_uid', sa.String(length=64), nullable=False),
        sa.Column('study_uid', sa.String(length=64), nullable=False),
        sa.Column('seg_sop_uid', sa.String(length=64), nullable=False),
        sa.Column('seg_series_uid', sa.String(length=64), nullable=False),
        sa.Column('seg_sha256', sa.String(length=64), nullable=False),
        sa.Column('model_version_id', sa.Integer(), nullable=True),
        sa.Column('frames', sa.JSON(), nullable=False),
        sa.Column('destination', sa.String(length=300), nullable=True),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_dicom_results_run_id_runs')),
        sa.ForeignKeyConstraint(['seg_sha256'], ['blobs.sha256'], name=op.f('fk_dicom_results_seg_sha256_blobs')),
        sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'],
                                name=op.f('fk_dicom_results_model_version_id_model_versions')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_dicom_results')),
        sa.UniqueConstraint('seg_sop_uid', name=op.f('uq_dicom_results_seg_sop_uid')),
    )
    with op.batch_alter_table('dicom_results', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dicom_results_run_id'), ['run_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_dicom_results_status'), ['status'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('dicom_results', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dicom_results_status'))
        batch_op.drop_index(batch_op.f('ix_dicom_results_run_id'))
    op.drop_table('dicom_results')
