-- Tests create a database each; the compose MySQL user needs the same rights as the
-- one scripts/services.sh creates in MariaDB.
GRANT ALL PRIVILEGES ON *.* TO 'sluice'@'%' WITH GRANT OPTION;
FLUSH PRIVILEGES;
