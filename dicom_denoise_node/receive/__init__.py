"""① Receive: the C-STORE/C-ECHO SCP that makes each instance durable (spool + catalog) before Success;
admission (AE titles, TLS, limits), the association audit, TCP settings."""
