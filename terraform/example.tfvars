# The example values `nox -s terraform` plans with (terraform plan -var-file=example.tfvars): every variable
# without a default. Copy it to terraform.tfvars (not committed) and put your own project and Gate there.
project_id         = "cd4ml-example"
spinnaker_gate_url = "https://gate.example.com"
