//! The `certificates` table.

use super::*;

impl Db {
    pub fn record_certificate(&mut self, rec: &CertificateRecord) -> Result<(), AuthError> {
        let serial = normalize_serial(&rec.serial_hex)?;
        let result = self.conn.execute(
            "INSERT INTO certificates
               (serial_hex, client_id, fingerprint_sha256_hex, not_before, not_after, revoked_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                serial,
                rec.client_id,
                rec.fingerprint_sha256_hex.to_ascii_lowercase(),
                rec.not_before,
                rec.not_after,
                rec.revoked_at
            ],
        );
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique(&e, "certificates.serial_hex") => Err(AuthError::Duplicate {
                what: "certificate serial",
                value: serial,
            }),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Revokes the certificate with this serial, or every unrevoked certificate of this client
    /// (id or identity). Returns the records revoked now.
    pub fn revoke_certificate(
        &mut self,
        target: &str,
    ) -> Result<Vec<CertificateRecord>, AuthError> {
        let now = now_unix();
        let serial = normalize_serial(target).ok();
        let by_serial = match &serial {
            Some(s) => self
                .conn
                .query_row(
                    &format!("{CERT_SELECT} WHERE serial_hex = ?1"),
                    [s],
                    cert_row,
                )
                .optional()
                .map_err(|e| self.fail(e))?,
            None => None,
        };
        let targets: Vec<CertificateRecord> = match by_serial {
            Some(rec) => vec![rec],
            None => {
                let client = self.client(target).map_err(|_| AuthError::NotFound {
                    what: "certificate or client",
                    value: target.to_owned(),
                })?;
                let mut st = self
                    .conn
                    .prepare(&format!("{CERT_SELECT} WHERE client_id = ?1"))
                    .map_err(|e| self.fail(e))?;
                st.query_map([&client.id], cert_row)
                    .map_err(|e| self.fail(e))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| self.fail(e))?
            }
        };
        let mut revoked = Vec::new();
        for mut rec in targets.into_iter().filter(|r| r.revoked_at.is_none()) {
            self.conn
                .execute(
                    "UPDATE certificates SET revoked_at = ?2 WHERE serial_hex = ?1",
                    params![rec.serial_hex, now],
                )
                .map_err(|e| self.fail(e))?;
            rec.revoked_at = Some(now);
            revoked.push(rec);
        }
        Ok(revoked)
    }

    pub fn list_certificates(&self) -> Result<Vec<CertificateRecord>, AuthError> {
        self.rows(
            &format!("{CERT_SELECT} ORDER BY not_before, serial_hex"),
            cert_row,
        )
    }
}

pub(super) const CERT_SELECT: &str = "SELECT serial_hex, client_id, fingerprint_sha256_hex, not_before, \
                           not_after, revoked_at FROM certificates";

pub(super) fn cert_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CertificateRecord> {
    Ok(CertificateRecord {
        serial_hex: r.get(0)?,
        client_id: r.get(1)?,
        fingerprint_sha256_hex: r.get(2)?,
        not_before: r.get(3)?,
        not_after: r.get(4)?,
        revoked_at: r.get(5)?,
    })
}
