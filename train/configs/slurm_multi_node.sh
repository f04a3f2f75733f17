#!/bin/bash
# D-BETA pre-training on several SLURM nodes: one `accelerate launch` per node (srun, one task per
# node), each starting one process per GPU, joined over NCCL at the first node of the allocation.
#
#   sbatch --nodes=2 train/configs/slurm_multi_node.sh --dataset_dir /shared/data/mimic_prepared \
#       --output_dir /shared/outputs/dbeta-mimic --max_train_steps 300000
#
# Arguments after the script name go to train/pretrain.py. The run always passes
# --resume_from_checkpoint latest, so resubmitting the same command (after a time limit, a
# preemption or with another --nodes) continues from the newest complete checkpoint in
# --output_dir (README, "Several machines"). --dataset_dir and --output_dir must be on a file system
# that every node sees. Run it from the repository root.
#SBATCH --job-name=dbeta-pretrain
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --output=dbeta-pretrain-%j.out
set -euo pipefail

export GPUS_PER_NODE=${GPUS_PER_NODE:-8}
export MAIN_PROCESS_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MAIN_PROCESS_PORT=${MAIN_PROCESS_PORT:-29500}
export NUM_PROCESSES=$((SLURM_NNODES * GPUS_PER_NODE))
# Each node's local processes share its CPU cores for data loading.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

echo "nodes: $SLURM_JOB_NODELIST; main: $MAIN_PROCESS_IP:$MAIN_PROCESS_PORT; $NUM_PROCESSES processes"
# SLURM_NODEID (set by srun per node) is the machine rank; --kill-on-bad-exit stops every node when one fails.
srun --kill-on-bad-exit=1 bash -c 'accelerate launch --config_file train/configs/multi_node.yaml \
    --num_machines "$SLURM_NNODES" --num_processes "$NUM_PROCESSES" --machine_rank "$SLURM_NODEID" \
    --main_process_ip "$MAIN_PROCESS_IP" --main_process_port "$MAIN_PROCESS_PORT" \
    train/pretrain.py --resume_from_checkpoint latest "$@"' bash "$@"
