"""The local stack's identities and grants: the IAM policy Terraform grants (``policy``), the identities' access
tokens (``access_tokens``), their metadata servers (``metadata_server``), and the ID-token issuer stand-in
(``token_issuer``: ``python -m local_emulator.iam.token_issuer``). The ports that enforce the policy are
``local_emulator.iam_proxy``."""
