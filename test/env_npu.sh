#!/bin/bash
# Ascend CANN environment for the launch wrappers (sourced by test/train_*.sh unless etp_running_flag=true).
# Where CANN is installed it sources its set_env.sh and sets upstream's runtime switches; elsewhere (cpu,
# cuda) it changes nothing.
_cann_env=""
for _candidate in "${ASCEND_TOOLKIT_HOME:-}/set_env.sh" \
                  "${ASCEND_HOME:-/usr/local/Ascend}/ascend-toolkit/set_env.sh" \
                  /usr/local/Ascend/ascend-toolkit/set_env.sh \
                  /usr/local/Ascend/nnae/set_env.sh; do
    if [ -f "${_candidate}" ]; then
        _cann_env="${_candidate}"
        break
    fi
done
if [ -n "${_cann_env}" ]; then
    # shellcheck disable=SC1090
    source "${_cann_env}"
    export TASK_QUEUE_ENABLE=${TASK_QUEUE_ENABLE:-1}          # asynchronous operator dispatch
    export HCCL_WHITELIST_DISABLE=${HCCL_WHITELIST_DISABLE:-1}
    export ASCEND_SLOG_PRINT_TO_STDOUT=${ASCEND_SLOG_PRINT_TO_STDOUT:-0}
    export ASCEND_GLOBAL_LOG_LEVEL=${ASCEND_GLOBAL_LOG_LEVEL:-3}
    export ASCEND_GLOBAL_EVENT_ENABLE=${ASCEND_GLOBAL_EVENT_ENABLE:-0}
fi
unset _cann_env _candidate
