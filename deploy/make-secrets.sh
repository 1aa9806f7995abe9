#!/bin/sh
# Creates the stack's secret files (README, Deploy), never replacing one that exists:
#
#   sh deploy/make-secrets.sh [DIR]      (DIR: STACK_SECRETS_DIR of .env, default ./secrets)
#
# The pipeline's own secrets get random values; the channels' credentials (the e-mail relay's
# password, the Telegram bot's token) are created empty, for the operator to write.
set -eu

dir=${1:-./secrets}
umask 077
mkdir -p "$dir"
chmod 700 "$dir"

random() {
  # 32 letters and digits: nothing a URL, a shell or Grafana's $-expansion would read specially.
  head -c 96 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | cut -c 1-32
}

for name in clickhouse_writer_password clickhouse_grafana_password grafana_admin_password \
            pseudonym_key alertmanager_webhook_token; do
  if [ -e "$dir/$name" ]; then
    echo "kept    $dir/$name"
  else
    random > "$dir/$name"
    echo "created $dir/$name"
  fi
done
for name in alertmanager_smtp_password alertmanager_telegram_bot_token; do
  if [ -e "$dir/$name" ]; then
    echo "kept    $dir/$name"
  else
    : > "$dir/$name"
    echo "created $dir/$name (empty: write it)"
  fi
done
# The containers read the files as their own users (ClickHouse 101, Grafana 472, the pipeline
# 10001, Alertmanager 65534): files they may read, in a directory only root may enter.
chmod 644 "$dir"/*
