//! The MariaDB test server: one database per test, dropped at the end.
#![allow(dead_code)]

use mysql::prelude::Queryable;

pub fn mysql_url() -> String {
    std::env::var("SLUICE_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://sluice:sluice@127.0.0.1:3306/sluice".to_string())
}

/// A database of its own for one test, and a connection to it. Statements run in
/// the session time zone `+05:00`, so that a sluice relying on the server's zone
/// would read `TIMESTAMP` columns five hours off; [`MyDb::lines`] reads in UTC.
pub struct MyDb {
    pub name: String,
    pub url: String,
    conn: mysql::Conn,
}

impl MyDb {
    pub fn create(name: &str) -> Self {
        let admin_url = mysql_url();
        let mut admin = mysql::Conn::new(mysql::Opts::from_url(&admin_url).unwrap())
            .unwrap_or_else(|e| panic!("MariaDB at {admin_url} (run scripts/services.sh up): {e}"));
        admin
            .query_drop(format!(
                "DROP DATABASE IF EXISTS `{name}`; CREATE DATABASE `{name}` CHARACTER SET utf8mb4"
            ))
            .unwrap();
        let base = admin_url.rsplit_once('/').unwrap().0;
        let url = format!("{base}/{name}");
        let mut conn = mysql::Conn::new(mysql::Opts::from_url(&url).unwrap()).unwrap();
        conn.query_drop("SET time_zone = '+05:00', NAMES utf8mb4")
            .unwrap();
        Self {
            name: name.to_string(),
            url,
            conn,
        }
    }

    pub fn exec(&mut self, sql: &str) {
        self.conn
            .query_drop(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Rows of a query run in UTC, each as its text columns joined with `|`
    /// (`\N` for NULL).
    pub fn lines(&mut self, sql: &str) -> Vec<String> {
        self.exec("SET time_zone = '+00:00'");
        let rows: Vec<mysql::Row> = self
            .conn
            .query(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        self.exec("SET time_zone = '+05:00'");
        rows.into_iter()
            .map(|row| {
                row.unwrap()
                    .into_iter()
                    .map(|v| match v {
                        mysql::Value::NULL => "\\N".to_string(),
                        mysql::Value::Bytes(b) => String::from_utf8_lossy(&b).into_owned(),
                        other => other.as_sql(true).trim_matches('\'').to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join("|")
            })
            .collect()
    }

    pub fn drop(mut self) {
        let name = self.name.clone();
        let _ = self
            .conn
            .query_drop(format!("DROP DATABASE IF EXISTS `{name}`"));
    }
}
