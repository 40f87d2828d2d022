"""awsCognito: the provider (provider.py) and what only it needs: its
settings, the boto3 client, the one table from Cognito errors to domain
errors, and the attribute rules of its profile replies."""
